"""The relativistic loss, a gan-pipe plugin."""
