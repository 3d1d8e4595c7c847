"""Secure model serving (seeds 001, 002): enclave and public replicas behind a mixed-privacy gateway.

How the pieces fit: ``balancing`` and ``autoscale`` are pure policies; ``protocol`` the wire
formats; ``replica`` one model server (public process or enclave entrypoint); ``gateway`` the front
door; ``service`` starts and stops a whole deployment (its children through ``serdab.proc``);
``client`` attests, then sends; ``ray_engine`` is the same on Ray Serve (the ray extra). ``trust``
is the owner's chain of trust for a served model, built from ``serdab.kms`` (the measured model
image, the key service session): serving imports nothing from ``serdab.runtime``. Every HTTP
service here runs, answers errors and reads bodies through ``serdab.web``.
"""
