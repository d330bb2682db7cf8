"""Air-gapped bundles (`cellar bundle export/verify/import`)."""
