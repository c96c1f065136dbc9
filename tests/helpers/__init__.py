"""What many tests share: the stack harness, pods and agents, builders, waiting; never a test."""
