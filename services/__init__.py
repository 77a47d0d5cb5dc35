"""The five gRPC services of the mesh, one package each."""
