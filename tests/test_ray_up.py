"""`ray up` for real: cluster_configs/onprem.yaml brought up over SSH on this machine.

Two nodes on one host, each a Debian `sshd` (openssh-server) started by the test with its own
config, host key and an authorized key the test makes:

- head 127.0.0.1 and worker 127.0.0.2, both in one private network namespace. SSH is on port
  22 there and Ray uses its default ports (6379, 8265, 10001, ...): nothing of this cluster can
  collide with another Ray or sshd on the host, or be reached from outside the namespace. The
  `ray` commands of the test (`ray up`, `ray status`, `ray job submit`, `ray down`) run in it.
  Ray's cluster config has no SSH port (``auth`` takes user, key and a proxy command only), so
  port 22 is what makes the config the one a user runs.
- each node's sshd is the first process of its own PID namespace: `ray stop`, which the start
  commands and `ray down` run and which stops every Ray process it can see, sees that node's
  processes only (not the other node's, not this test session's Ray, not other users' Rays).
  When a node's sshd stops, the kernel ends whatever is left in its namespace.
- each node's sshd is also the first process of its own mount namespace, where the node's own
  directories are mounted on root's home, /tmp and /dev/shm (a tmpfs of its own): `ray up`
  syncs the project to that ``~`` and finds ``~/btr-venv`` there; Ray's /tmp/ray, its object
  store and the SSH control sockets are the node's own. Its `SetEnv` sets BLENDER_SLOTS (head 0,
  worker 2) and pip's offline settings (the network namespace has nothing but loopback).

The test's cluster YAML is cluster_configs/onprem.yaml with the addresses, the user and the key
replaced (asserted). The nodes are "set up before" as the YAML expects: ``~/btr-venv`` exists (a
venv whose site-packages reach the project's .venv, so torch, bpy and Ray are installed), so the
YAML's first setup line (apt + venv) is skipped; the pip lines run for real and install the
synced copy of the project into each node's venv. Then `ray job submit` runs
tests/drivers/ray_up_job.py on the head: 2 instances with ``resources={"blender": 1}`` land on
the worker (the head has 0 slots). Then `ray down` (Ray stops on the head) and `ray stop` on the
worker over SSH (`ray down` runs nothing on a local provider's workers), and nothing of the
cluster is left running: every process seen below either sshd is gone (by pid), both sshds are
stopped (by pid), and no process is left in the cluster's network namespace.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

REPO = Path(__file__).resolve().parent.parent
ONPREM = REPO / "cluster_configs" / "onprem.yaml"
VENV_SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"
ROOT_HOME = Path(pwd.getpwuid(0).pw_dir)  # the nodes' ~ (ssh expands ~ from the passwd entry, not $HOME)
TOOLS = ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "unshare", "nsenter", "ip")
# The fields the test's config may differ in from cluster_configs/onprem.yaml.
REPLACED = {("provider", "head_ip"), ("provider", "worker_ips"), ("auth", "ssh_user"), ("auth", "ssh_private_key")}

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.blender, pytest.mark.timeout(600)]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: starts sshd (root login) in its own PID and network namespaces"
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return (f"missing {', '.join(missing)}: Debian's openssh-server, openssh-client, rsync and iproute2 "
                "(scripts/test.sh installs them with apt-get)")
    run = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if run.returncode != 0:
        return f"cannot create PID/network namespaces here: {run.stderr.strip()}"
    st = os.stat("/run")
    if st.st_uid != 0 or st.st_mode & 0o022:
        return "/run is not a root-owned, non-group/world-writable directory (sshd's StrictModes needs one for the keys)"
    return None


def test_test_config_differs_from_onprem_yaml_only_in_addresses_user_and_key(tmp_path):
    config = _test_config(tmp_path / "id_ed25519")
    assert _diff_keys(yaml.safe_load(ONPREM.read_text()), config) == REPLACED
    tampered = dict(config, min_workers=1)
    assert _diff_keys(yaml.safe_load(ONPREM.read_text()), tampered) == REPLACED | {("min_workers",)}


def _test_config(key: Path) -> dict:
    config = yaml.safe_load(ONPREM.read_text())
    config["provider"]["head_ip"] = HEAD_IP
    config["provider"]["worker_ips"] = [WORKER_IP]
    config["auth"]["ssh_user"] = "root"
    config["auth"]["ssh_private_key"] = str(key)
    return config


def _diff_keys(a, b, path=()) -> set:
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_diff_keys(a.get(k), b.get(k), path + (k,)) for k in set(a) | set(b)))
    return set() if a == b else {path}


def _procs(root: psutil.Process) -> dict[tuple[int, float], str]:
    """Every process below ``root`` (a node's sshd), as (pid, create_time) -> name and argv."""
    out = {}
    for p in root.children(recursive=True):
        try:
            out[(p.pid, p.create_time())] = " ".join(p.cmdline())[:200] or p.name()
        except psutil.NoSuchProcess:
            pass
    return out


def _alive(key: tuple[int, float]) -> bool:
    try:
        return psutil.Process(key[0]).create_time() == key[1]
    except psutil.NoSuchProcess:
        return False


def _in_netns(inode: int) -> list[int]:
    pids = []
    for p in psutil.pids():
        try:
            if os.stat(f"/proc/{p}/ns/net").st_ino == inode:
                pids.append(p)
        except OSError:
            pass
    return pids


def _wait(predicate, timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"({path}: {e})"


class _Nodes:
    """The two sshd "machines" and the namespace they share; stop() ends them by pid."""

    def __init__(self, work: Path, ssh_dir: Path):
        self.work, self.ssh = work, ssh_dir
        self.unshare: dict[str, subprocess.Popen] = {}
        self.sshd: dict[str, psutil.Process] = {}
        self.sshd_keys: dict[str, tuple[int, float]] = {}  # (pid, create_time): checked gone at the end
        self.netns_inode = None

    def home(self, node: str) -> Path:
        return self.work / node

    def _sshd_config(self, node: str, ip: str, slots: int) -> Path:
        env = {
            "BLENDER_SLOTS": slots, "RAY_USAGE_STATS_ENABLED": 0,
            # no network in the namespace: pip uses what is installed and builds in place
            # (PIP_NO_BUILD_ISOLATION=0 *is* --no-build-isolation: pip's inverted "no-" env vars)
            "PIP_NO_INDEX": 1, "PIP_NO_BUILD_ISOLATION": 0, "PIP_DISABLE_PIP_VERSION_CHECK": 1,
        }
        cfg = self.ssh / f"sshd_{node}"
        cfg.write_text("\n".join([
            f"ListenAddress {ip}:22",
            f"HostKey {self.ssh / 'host_ed25519'}",
            f"AuthorizedKeysFile {self.ssh / 'authorized_keys'}",
            "PidFile none",
            "PermitRootLogin prohibit-password",  # key only, and only for this sshd
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes yes",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()),
            "",
        ]))
        return cfg

    def _provision(self, node: str) -> list[str]:
        """A node set up before: ~/btr-venv with the project .venv's packages (and its scripts).

        Returns the shell lines that give the node, inside its mount namespace, its own home
        (on root's home directory, so that ssh's and the shell's ``~`` agree), its own /tmp and /dev/shm;
        the interpreter the venvs are made from stays visible (read-only) if it lives in root's home.
        """
        home, tmp = self.home(node), self.work / f"{node}-tmp"
        tmp.mkdir(parents=True)
        tmp.chmod(0o1777)
        base = Path(sys.base_prefix)
        python = base / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run([str(python), "-m", "venv", "--without-pip", str(home / "btr-venv")], check=True, timeout=60)
        site = home / "btr-venv" / "lib" / VENV_SITE.parent.name / "site-packages"
        (site / "_project_venv.pth").write_text(f"{VENV_SITE}\n")
        for script in ("pip", "ray"):  # as the node sees it: ~ is ROOT_HOME there
            body = (Path(sys.prefix) / "bin" / script).read_text().split("\n", 1)[1]
            (home / "btr-venv" / "bin" / script).write_text(f"#!{ROOT_HOME}/btr-venv/bin/python\n{body}")
            (home / "btr-venv" / "bin" / script).chmod(0o755)
        lines = []
        # What the node's venv reaches (the interpreter, the project's .venv through the .pth,
        # the checkout its editable install points to) stays visible, read-only, where it is, also
        # when it lives below root's home or /tmp, which the node gets its own of (CI may clone
        # the repository into /tmp).
        keeps: list[Path] = []
        for src in (base, Path(sys.prefix).resolve(), REPO):
            if not any(src.is_relative_to(k) for k in keeps):
                keeps = [k for k in keeps if not k.is_relative_to(src)] + [src]
        for src in keeps:
            for hidden, own in ((ROOT_HOME, home), (Path("/tmp"), tmp)):
                if src.is_relative_to(hidden) and src != hidden:
                    keep = own / src.relative_to(hidden)
                    keep.mkdir(parents=True, exist_ok=True)
                    lines += [f"mount --bind {src} {keep}", f"mount -o remount,bind,ro {keep}"]
        # /dev/shm too: Ray's object store and blendtorch's rings live there, and a sweep of
        # "stale" btr-shm-<pid>-* directories in another PID namespace would take this node's.
        return lines + [f"mount --rbind {home} {ROOT_HOME}", f"mount --rbind {tmp} /tmp",
                        "mount -t tmpfs -o mode=1777 tmpfs /dev/shm"]

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh / "host_ed25519")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "btr-ray-up-test",
                        "-f", str(self.ssh / "id_ed25519")], check=True)
        shutil.copy(self.ssh / "id_ed25519.pub", self.ssh / "authorized_keys")
        os.chmod(self.ssh / "authorized_keys", 0o600)
        for node, ip, slots in (("head", HEAD_IP, 0), ("worker", WORKER_IP, 2)):
            self.home(node).mkdir()
            mounts = self._provision(node)
            cfg = self._sshd_config(node, ip, slots)
            # The first process of a new PID and mount namespace (--mount-proc: its own /proc, and
            # mounts that stay inside); the head's also creates the network namespace.
            setup = mounts + (["ip link set lo up"] if node == "head" else []) + [f"exec /usr/sbin/sshd -D -e -f {cfg}"]
            argv = ["unshare", *(["--net"] if node == "head" else []), "--pid", "--fork", "--mount-proc", "--kill-child",
                    "sh", "-ec", " && ".join(setup)]
            if node == "worker":  # the head's network namespace, the rest of its own
                argv = self.nsenter(argv)
            log = open(self.work / f"sshd_{node}.log", "w")
            self.unshare[node] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            listening = f"Server listening on {ip} port 22"
            ok = _wait(lambda: listening in (self.work / f"sshd_{node}.log").read_text()
                       or self.unshare[node].poll() is not None, 30, 0.2)
            assert ok and self.unshare[node].poll() is None, _tail(self.work / f"sshd_{node}.log")
            self.sshd[node] = psutil.Process(self.unshare[node].pid).children()[0]
            assert self.sshd[node].name() == "sshd", self.sshd[node]
            self.sshd_keys[node] = (self.sshd[node].pid, self.sshd[node].create_time())
            if node == "head":
                self.netns_inode = os.stat(f"/proc/{self.sshd[node].pid}/ns/net").st_ino

    def nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.sshd['head'].pid}/ns/net", "--", *argv]

    def stop(self) -> None:
        """SIGTERM each sshd (the first process of its PID namespace) by pid, SIGKILL if needed."""
        for node, proc in self.unshare.items():
            sshd = self.sshd.get(node)
            try:
                (sshd or psutil.Process(proc.pid)).send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                if sshd is not None and sshd.is_running():
                    sshd.kill()
                proc.kill()
                proc.wait(timeout=20)


def _ssh(key: Path, ip: str, command: str) -> list[str]:
    """ssh as `ray up` does it (its options: no host key pinning, this key only)."""
    return ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", f"root@{ip}", command]


def _run(argv: list[str], log: Path, timeout: float, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    with open(log, "w") as out:
        try:
            return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired:
            out.write(f"\n[test] timed out after {timeout:.0f}s\n")
            return subprocess.CompletedProcess(argv, -1)


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_ray_up_onprem_job_on_the_worker_then_ray_down_leaves_nothing():
    work = Path(tempfile.mkdtemp(prefix="btr-", dir="/tmp"))  # short: Ray's socket paths live below
    ssh_dir = Path(tempfile.mkdtemp(prefix="btr-ray-up-", dir="/run"))  # StrictModes: no /tmp above the keys
    nodes = _Nodes(work, ssh_dir)
    ray_bin = str(Path(sys.prefix) / "bin" / "ray")
    cluster = f"blendtorch-onprem-test-{os.getpid()}"  # its own SSH ControlPath dir and state files
    config_path = work / "onprem-loopback.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(work / "laptop"), TMPDIR=str(work / "laptop"), RAY_USAGE_STATS_ENABLED="0")
    (work / "laptop").mkdir()
    down_done = False
    try:
        nodes.start()
        config = _test_config(ssh_dir / "id_ed25519")
        assert _diff_keys(yaml.safe_load(ONPREM.read_text()), config) == REPLACED
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        # 1. ray up: the head over SSH (sync, setup, start); the head's autoscaler then does the worker.
        up_argv = nodes.nsenter([ray_bin, "up", "-y", "--no-config-cache", "--cluster-name", cluster, str(config_path)])
        up = _run(up_argv, work / "ray_up.log", timeout=300, env=env)
        if up.returncode != 0 and "The current node timed out during startup" in (work / "ray_up.log").read_text():
            # `ray start` gives the raylet a fixed 30 s to register (Ray 2.60, node.py); on 2 cores
            # shared with the rest of the suite that can pass. `ray up` again (it stops Ray first).
            shutil.copy(work / "ray_up.log", work / "ray_up.1.log")
            up = _run(up_argv, work / "ray_up.log", timeout=300, env=env)
        assert up.returncode == 0, "ray up failed:\n" + _tail(work / "ray_up.log")
        head_log = work / "head-tmp" / "ray" / "session_latest" / "logs" / "monitor.log"

        def worker_joined() -> bool:
            st = _run(nodes.nsenter([ray_bin, "status", f"--address={HEAD_IP}:6379"]), work / "ray_status.log",
                      timeout=60, env=env)
            return st.returncode == 0 and re.search(r"/2\.0 blender", (work / "ray_status.log").read_text()) is not None

        assert _wait(worker_joined, 240, 5), (
            "the worker's 2 blender slots never showed in `ray status`:\n" + _tail(work / "ray_status.log")
            + "\n--- head monitor.log\n" + _tail(head_log))
        # ray up synced the project to both nodes and pip installed it into each node's venv.
        for node in ("head", "worker"):
            assert (nodes.home(node) / "blendtorch-ray" / "pyproject.toml").is_file(), node
            assert list((nodes.home(node) / "btr-venv" / "lib").glob("python*/site-packages/blendtorch_ray/launcher.py")), node

        # 2. ray job submit: stream from 2 instances placed by the blender resource. While it
        # runs, every process below each node's sshd is noted by pid (Ray's, the job's, Blender).
        running: dict[str, dict] = {"head": {}, "worker": {}}
        with open(work / "ray_job.log", "w") as out:
            job = subprocess.Popen(nodes.nsenter([
                ray_bin, "job", "submit", f"--address=http://{HEAD_IP}:8265", "--",
                "python", "-u", f"{ROOT_HOME}/blendtorch-ray/tests/drivers/ray_up_job.py", "4"]),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
            deadline = time.monotonic() + 300
            while job.poll() is None and time.monotonic() < deadline:
                for node in running:
                    running[node].update(_procs(nodes.sshd[node]))
                time.sleep(0.5)
            if job.poll() is None:
                job.kill()
            job.wait(timeout=30)
        job_out = (work / "ray_job.log").read_text(errors="replace")
        results = [line.split("RESULT ", 1)[1] for line in job_out.splitlines() if "RESULT {" in line]
        assert job.returncode == 0 and len(results) == 1, "the job failed:\n" + _tail(work / "ray_job.log", 80)
        result = json.loads(results[0])
        assert result["blender_total"] == 2, result
        assert result["node_addresses"] == [HEAD_IP, WORKER_IP], result
        assert sorted(result["counts"]) == ["0", "1"] and min(result["counts"].values()) >= 4, result
        assert result["instance_nodes"] == {"0": WORKER_IP, "1": WORKER_IP}, result
        # The job ran with the head's venv and the project copy `ray up` installed there.
        assert result["python"] == f"{ROOT_HOME}/btr-venv/bin/python", result
        assert result["blendtorch_ray"].startswith(f"{ROOT_HOME}/btr-venv/lib/"), result

        for node in running:  # and what runs now
            running[node].update(_procs(nodes.sshd[node]))
        for node, name, n in (("head", "gcs_server", 1), ("head", "raylet", 1), ("worker", "raylet", 1),
                              ("worker", "blender_worker.bootstrap", 2)):
            seen = [cmd for cmd in running[node].values() if name in cmd]
            assert len(seen) >= n, (node, name, running[node])

        # 3. ray down: `ray stop` on the head. The local provider runs nothing on the workers: their
        # raylet exits a minute after it lost the head, Ray's log_monitor stays until `ray stop`
        # there. So, as cluster_configs/README.md says: `ray stop` on each worker over SSH.
        down = _run(nodes.nsenter([ray_bin, "down", "-y", "--cluster-name", cluster, str(config_path)]),
                    work / "ray_down.log", timeout=180, env=env)
        down_done = True
        assert down.returncode == 0, "ray down failed:\n" + _tail(work / "ray_down.log")
        head_procs = {k: c for k, c in running["head"].items() if not c.startswith("sshd")}
        _wait(lambda: not any(_alive(k) for k in head_procs), 60, 1)
        left = {k[0]: c for k, c in head_procs.items() if _alive(k)}
        assert not left, f"still running on the head after ray down: {left}"
        stop = _run(nodes.nsenter(_ssh(ssh_dir / "id_ed25519", WORKER_IP, "~/btr-venv/bin/ray stop")),
                    work / "ray_stop_worker.log", timeout=120, env=env)
        assert stop.returncode == 0, _tail(work / "ray_stop_worker.log")
        cluster_procs = {k: c for procs in running.values() for k, c in procs.items() if not c.startswith("sshd")}
        _wait(lambda: not any(_alive(k) for k in cluster_procs), 60, 1)
        left = {k[0]: c for k, c in cluster_procs.items() if _alive(k)}
        assert not left, f"still running after ray down and ray stop on the worker: {left}"
        # ... and nothing new either: below each sshd only sshd's own session processes.
        for node in ("head", "worker"):
            extra = {k[0]: c for k, c in _procs(nodes.sshd[node]).items() if not c.startswith("sshd")}
            assert not extra, (node, extra)
    finally:
        if nodes.sshd.get("head") is not None and not down_done:
            _run(nodes.nsenter([ray_bin, "down", "-y", "--cluster-name", cluster, str(config_path)]),
                 work / "ray_down_cleanup.log", timeout=120, env=env)
        sshd_pids = dict(nodes.sshd_keys)
        nodes.stop()
        # 4. sshd stopped, and no process left in the cluster's network namespace (ssh
        # ControlMaster clients of `ray up` included: they end once their sshd is gone).
        inode = nodes.netns_inode
        gone = inode is None or _wait(lambda: not _in_netns(inode), 30, 0.5)
        leftovers = [] if inode is None else _in_netns(inode)
        for pid in leftovers:  # cleanup on failure; the assert below still reports them
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        control = Path("/tmp") / f"ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:HASH_MAX_LENGTH]}"
        shutil.rmtree(control / hashlib.sha256(cluster.encode()).hexdigest()[:HASH_MAX_LENGTH], ignore_errors=True)
        try:
            control.rmdir()  # Ray's per-user dir of control sockets, if nothing else uses it
        except OSError:
            pass
        shutil.rmtree(ssh_dir, ignore_errors=True)
        with open("/proc/self/mountinfo") as f:  # never delete through a mount (none expected here)
            mounted = [line.split()[4] for line in f if line.split()[4].startswith(str(work))]
        if not mounted and not os.environ.get("BTR_KEEP_RAY_UP_DIR"):
            shutil.rmtree(work, ignore_errors=True)
    assert not [n for n, k in sshd_pids.items() if _alive(k)], "sshd still running"
    assert all(p.returncode is not None for p in nodes.unshare.values())
    assert gone and not leftovers, f"processes left in the cluster's network namespace: {leftovers}"
