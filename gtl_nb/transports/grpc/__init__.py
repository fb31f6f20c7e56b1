"""GTL over gRPC: the protobuf schema (``gtl.proto``), its generated modules and the message mapping.

* ``gtl.proto`` -- package ``gtl.v1``: one typed message per GTL message, the ``Frame`` wrappers and
  the ``GTL`` service. Any language can generate a client from it.
* ``gtl_pb2.py``, ``gtl_pb2.pyi``, ``gtl_pb2_grpc.py`` -- generated; never edit them, regenerate with
  ``python -m gtl_nb.transports.grpc.generate`` (a test fails when they are stale).
* ``mapping`` -- ``to_proto`` / ``from_proto`` between the msgspec messages and the protobuf ones.

This ``__init__`` imports nothing but ``os``, so ``generate`` runs without ``grpcio`` or ``protobuf``
installed (it needs ``grpcio-tools``); ``mapping`` needs ``protobuf``.

**gRPC's own log lines.** gRPC's C core writes INFO lines to standard error — a refused certificate's
"Handshake failed with error SSL_ERROR_SSL …", printed while ``https://`` discovery tries ``grpcs://``
and goes on to another transport. The client's error already says what failed, so this package sets
``GRPC_VERBOSITY=ERROR`` when it is first imported — before ``grpc`` is, in this process — unless the
variable is set already: a user's own setting stands. (gRPC reads it once, at its import: a process
that imported ``grpc`` before ``gtl_nb`` keeps gRPC's default.)
"""

import os

VERBOSITY_ENV = "GRPC_VERBOSITY"
os.environ.setdefault(VERBOSITY_ENV, "ERROR")
