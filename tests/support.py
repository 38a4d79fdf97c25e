"""Helpers the Python tests share (stdlib only, so any venv can import it):
building and finding the shoal binary, and free loopback ports."""
import json
import os
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shoal_binary():
    """Builds `shoal` (dev profile) and returns its path in the target dir."""
    subprocess.run(["cargo", "build", "--quiet", "--locked", "--bin", "shoal"], cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    return os.path.join(json.loads(meta.stdout)["target_directory"], "debug", "shoal")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
