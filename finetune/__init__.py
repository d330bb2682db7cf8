"""`cellar finetune`: LoRA / QLoRA adapters trained on a JSONL file, registered in the store."""
