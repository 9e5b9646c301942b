"""The channel to tmemd: frames (wire, payloads), the pipelined client (transport), ports."""
