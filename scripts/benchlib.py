"""Helpers shared by the benchmark scripts: logging and fio reference runs."""
import json
import shutil
import subprocess
import sys


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fio(directory, name, bs, size, seconds, engine="sync", extra=()):
    """One fio job: sequential writes, an fdatasync after every write."""
    cmd = ["fio", f"--name={name}", f"--directory={directory}", "--rw=write",
           f"--ioengine={engine}", "--fdatasync=1", f"--bs={bs}", f"--size={size}",
           f"--runtime={seconds}", "--time_based", "--unlink=1",
           "--output-format=json", *extra]
    log("  $ " + " ".join(cmd))
    if not shutil.which("fio"):
        sys.exit("fio is not installed: run with --install (or apt-get install fio)")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    w = job["write"]
    sync_p99 = job.get("sync", {}).get("lat_ns", {}).get("percentile", {}).get("99.000000", 0)
    return {"cmd": " ".join(cmd), "bytes_per_sec": w["bw_bytes"], "iops": w["iops"],
            "fdatasync_p99_us": sync_p99 / 1000.0}


def fio_parallel(directories, name, bs, size, seconds):
    """One fio job per directory at once (sequential writes, an fdatasync
    after every write), reported together: what the disks give side by side."""
    cmd = ["fio", "--rw=write", "--ioengine=sync", "--fdatasync=1", f"--bs={bs}",
           f"--size={size}", f"--runtime={seconds}", "--time_based", "--unlink=1",
           "--group_reporting", "--output-format=json"]
    for i, d in enumerate(directories):
        cmd += [f"--name={name}-{i}", f"--directory={d}"]
    log("  $ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    w = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    return {"cmd": " ".join(cmd), "bytes_per_sec": w["bw_bytes"], "iops": w["iops"]}


def free_port():
    """A port that was free a moment ago."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    import os
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
