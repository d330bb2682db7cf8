"""One module per group of endpoints; handlers stay thin and call services."""
