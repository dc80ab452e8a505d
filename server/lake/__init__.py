"""The lakehouse: every event exactly once in the Iceberg table `headlessly.events`, and restores from it.

pyiceberg and pyarrow are imported only here, and only when a lake function runs."""
