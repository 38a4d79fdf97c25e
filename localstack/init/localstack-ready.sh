#!/bin/sh
# Runs inside LocalStack once it is ready: creates the bucket shoal uses.
awslocal s3 mb s3://shoal || true
