"""Serving on Ray Serve (``serdab serve MODEL --engine ray``): the same replicas, policies and rule.

Two Ray Serve applications: public replicas at ``/`` (OIP v2 and seed 001's ``/predict-public``,
plus ``/v1/gateway``) and enclave replicas at ``/secure``. A public replica runs the replica app
(``serdab.serve.replica``) in-process. An enclave replica is a Ray Serve replica on a node that
offers the ``enclave`` resource (one per node: the node is the host whose EPC it uses) which
launches the measured replica image through ``serdab.tee`` there; the enclave attests to the key
service and gets the model key and the service key exactly as behind the gateway.

Ray's proxy terminates HTTP, so TLS cannot pass through to the enclave as it does at the
gateway's L4 port. Secure requests therefore travel *sealed* (``serdab.serve.sealed``): the
client seals the request to the attested service key, and ``/secure`` forwards only sealed
requests, the attestation document and the service certificate; any plaintext secure route is
refused (403). Ray's proxy, object store and the replica actor see ciphertext only. (For the same
reason this engine serves no gRPC: Ray Serve's gRPC proxy terminates TLS.)

One module per concern, all but ``args`` needing the ray extra:

- ``args``: what a Serve config's ``args`` may say to the two builders (validated, no Ray import);
- ``compat``: every private or version-dependent Ray API Serdab touches, with the versions checked;
- ``deployments``: the replicas and the small front deployments;
- ``routing``: the gateway's balancing policies as a request router, its autoscaling rule as a policy;
- ``apps``: the builders ``public_app`` and ``secure_app`` (a Serve config's ``import_path``);
- ``service``: ``RayService``, the engine behind ``serdab.serve.engine``.
"""
