"""edgefleet throughput benchmark (run bench/run_bench.py); a package so its modules import as bench.*."""
