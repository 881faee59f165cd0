"""One run per workdir: WORKDIR/lock.json names the process that trains in it.

Two runs on one workdir would interleave metrics and race each other's checkpoints, so the second one is
refused with the holder's host, pid and start time. The holder refreshes a heartbeat in the file every
HEARTBEAT_S seconds; a lock is stale (left by a killed run) when its process is gone on this host, or when
its heartbeat is older than STALE_S on another host (a preempted VM). A stale lock is taken over, and the
log says so. Local files are created exclusively (O_EXCL); in a bucket the lock is written, then read
back to check that no other run wrote it at the same moment.
"""

import datetime
import os
import socket
import threading
import time
import uuid

from vlm_jax import storage
from vlm_jax.errors import ConfigError

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30
STALE_S = 300


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  def __init__(self, workdir: str, *, log=print):
    self.path = storage.join(workdir, LOCK_FILE)
    self.workdir, self.log = workdir, log
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None

  def _info(self, started: float) -> dict:
    return {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "token": self.token,
      "started": started,
      "heartbeat": time.time(),
    }

  def holder(self) -> dict | None:
    """The current holder's info, or None when the workdir is free or its lock is stale."""
    try:
      info = storage.read_json(self.path)
    except (FileNotFoundError, ValueError):  # absent, or cut short by a kill: not a live holder
      return None
    if info.get("host") == socket.gethostname():
      return info if _pid_alive(int(info.get("pid", -1))) else None
    return info if time.time() - float(info.get("heartbeat", 0)) < STALE_S else None

  def acquire(self):
    holder = self.holder()
    if holder is not None:
      started = datetime.datetime.fromtimestamp(holder["started"]).isoformat(timespec="seconds")
      raise ConfigError(
        f"{self.workdir} is in use by another run (pid {holder['pid']} on {holder['host']}, started "
        f"{started}); wait for it to finish or stop it, or train in another --workdir"
      )
    if storage.exists(self.path):
      stale = storage.read_text(self.path).strip()
      self.log(f"Taking over a stale lock in {self.workdir} (its run is gone: {stale[:200]})")
      storage.remove(self.path)
    info = self._info(time.time())
    if storage.is_remote(self.path):
      storage.write_json(self.path, info)
      time.sleep(1.0)  # let a racing writer's upload land, then see whose lock stands
      if storage.read_json(self.path).get("token") != self.token:
        raise ConfigError(
          f"another run took the lock of {self.workdir} at the same moment; run one at a time"
        )
    else:
      storage.makedirs(self.workdir)
      try:
        fd = os.open(
          self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
        )  # local path: exclusive create
      except FileExistsError:
        raise ConfigError(
          f"another run took the lock of {self.workdir} at the same moment; run one at a time"
        ) from None
      os.close(fd)
      storage.write_json(self.path, info)
    self._started = info["started"]
    self._thread = threading.Thread(target=self._heartbeat, daemon=True)
    self._thread.start()

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S):
      try:
        storage.write_json(self.path, self._info(self._started))
      except OSError:  # a storage hiccup: the next beat tries again
        pass

  def release(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      try:
        if storage.read_json(self.path).get("token") == self.token:
          storage.remove(self.path)
      except (FileNotFoundError, ValueError):
        pass

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
