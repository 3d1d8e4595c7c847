"""Secure model serving (seeds 001, 002): enclave and public replicas behind a mixed-privacy gateway.

``serdab.serve.balancing`` and ``autoscale`` are pure policies; ``protocol`` the wire formats;
``replica`` one model server (public process or enclave entrypoint); ``gateway`` the front door;
``service`` starts and stops a whole deployment; ``client`` attests, then sends.
"""
