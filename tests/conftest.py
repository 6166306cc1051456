"""Root of the test tree: its folder goes on ``sys.path``, so ``peer_tools`` imports."""
