"""The paper's study: the sweep over strategies and worker counts, the wall-time model, the learning-rate
range test and the benchmark. Import the modules themselves (:mod:`.sweep` loads TensorFlow)."""
