"""Speed benchmarks: each module prints a small table measured in one run."""
