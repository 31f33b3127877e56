"""gdn-harness: reference-vs-optimized correctness harness for Gated DeltaNet."""
__version__ = "0.1.0"
