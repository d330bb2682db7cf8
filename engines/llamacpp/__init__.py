"""The llama.cpp engine: a worker process on llama-cpp-python, and its launcher."""
