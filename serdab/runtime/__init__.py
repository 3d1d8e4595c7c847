"""The partitioned pipeline runtime (seed 000 sec. III, Fig. 2): a placement, run for real.

Roles and where they live: the resource manager (``resources``) knows the devices a run may use
and which stopped answering; the application manager (``manager``) plans, checks the privacy
policy again, deploys one dataflow engine (``engine``) per device through an ``Executor``
(``executor``), streams frames (``frames``) in chunks and collects results; transmission
operators (``link``) carry every tensor between stages encrypted and authenticated per link;
``emulation`` makes a worker as fast as its device (time dilation, padded compute, shaped
links); ``repartition`` decides when measured stage times call for a new plan. ``topology`` turns a
placement into workers and links (pure), ``deployment`` starts and wires them, and ``protocol``
holds every message between the manager and an engine as a typed value. A trusted stage's image
and key come from ``serdab.kms`` (``build_model_image``, ``OwnerSession``, ``fetch_model``);
untrusted workers are children started through ``serdab.proc``; Ray's part lives in
``ray_executor`` and the Ray-free ``serdab.raycluster``.

Frame ids count from 0 over the whole stream; stage ``k`` of a placement with replicas takes
frame ``i`` on replica ``i % r`` (as the cost model assumes). Times in messages are seconds of
this host's monotonic clock unless the name says ``emulated``.
"""

__all__: list[str] = []
