"""Generated maestro.v1 protobuf and gRPC modules. Do not edit: run protos/build.py."""
