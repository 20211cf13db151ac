"""Training-time compression the checkpoint format knows about: pruning and QAT."""
