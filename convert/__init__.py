"""Model format conversions shared by the offline tools: GGUF -> Hugging Face checkpoint
(`cellar models convert`), checkpoint -> GGUF with llama.cpp's own converter, and those
converters unpacked from the llama-cpp-python source package (`cellar tools`).

It sits below quantize, finetune and bundle, which use it, and imports only the core.
"""
