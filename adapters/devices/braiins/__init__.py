"""Braiins OS+ miners over the Braiins OS+ Public API (gRPC): see adapters.devices.braiins_miner.

`bos_api_pb2.py` is generated from `bos_api.proto` (the subset of the API gridflex speaks):
    python -m grpc_tools.protoc -I adapters/devices/braiins --python_out=adapters/devices/braiins \
        --pyi_out=adapters/devices/braiins adapters/devices/braiins/bos_api.proto
"""
