"""Secure model serving (seeds 001, 002): enclave and public replicas behind a mixed-privacy gateway.

How the pieces fit: ``config`` is the one serving configuration (both engines' parts, validated
once); ``engine`` the interface every engine implements and the registry `serdab serve` picks
from; ``balancing`` and ``autoscale`` are pure policies; ``protocol`` the REST wire formats and
``grpc_oip`` the gRPC ones; ``replica`` one model server (public process or enclave entrypoint);
``gateway`` the front door (``forward`` its HTTP/1.1 client, on h11); ``service`` the gateway engine,
starting and stopping a whole deployment (its children through ``serdab.proc``); ``client`` attests,
then sends; ``ray/`` is the Ray Serve engine (the ray extra), split by concern. ``trust``
is the owner's chain of trust for a served model, built from ``serdab.kms`` (the measured model
image, the key service session): serving imports nothing from ``serdab.runtime``. Every HTTP
service here runs, answers errors and reads bodies through ``serdab.web``.
"""
