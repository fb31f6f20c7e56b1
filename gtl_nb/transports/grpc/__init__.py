"""GTL over gRPC: the protobuf schema (``gtl.proto``), its generated modules and the message mapping.

* ``gtl.proto`` -- package ``gtl.v1``: one typed message per GTL message, the ``Frame`` wrappers and
  the ``GTL`` service. Any language can generate a client from it.
* ``gtl_pb2.py``, ``gtl_pb2.pyi``, ``gtl_pb2_grpc.py`` -- generated; never edit them, regenerate with
  ``python -m gtl_nb.transports.grpc.generate`` (a test fails when they are stale).
* ``mapping`` -- ``to_proto`` / ``from_proto`` between the msgspec messages and the protobuf ones.

This ``__init__`` imports nothing, so ``generate`` runs without ``grpcio`` or ``protobuf``
installed (it needs ``grpcio-tools``); ``mapping`` needs ``protobuf``.
"""
