"""The public REST v1 API in front of the mesh."""
