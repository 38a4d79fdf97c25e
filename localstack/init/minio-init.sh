#!/bin/sh
# Runs once MinIO is healthy: creates the bucket shoal uses.
set -e
mc alias set local http://minio:9000 minioadmin minioadmin
mc mb --ignore-existing local/shoal
