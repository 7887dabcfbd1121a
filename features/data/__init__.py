"""Shop data sources: the data contract, the validated loader, the synthetic shop and the
Complete Journey importer. Feature code reads a :class:`features.data.io.Shop` only."""
