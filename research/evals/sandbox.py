"""The sandbox's side of research.evals.code.execute: confines itself, then runs one program.

Run by a fresh interpreter (`python -I -S -B sandbox.py KEY=VALUE ...`), never imported by the
library; it uses a few modules of the standard library only (json and traceback would double its
start-up time). The KEY=VALUE pairs are written by code.execute (see CONFIG). In order:

1. Namespaces (Linux, when the kernel lets this process create them: as root, or unprivileged
   through a user namespace): new mount, network, PID and IPC namespaces. A waiter process
   stays outside; the program runs as PID 1 of the new PID namespace, so it sees only its own
   processes and every process it starts dies with it.
2. Inside them: a fresh /proc, at most 300 processes (the namespace's pid_max, kernel >= 6.14),
   every mount read-only, nosuid and nodev except the working directory, then every capability
   dropped and no_new_privs set, so none of this can be undone.
3. Resource limits: CPU time, address space, file size, open files, no core dumps (and processes,
   where the user is not root).
4. The guard: an audit hook (PEP 578) that refuses process creation, signals to other
   processes, sockets, ctypes, gc's object walks, raising resource limits, and any write,
   removal or permission change outside the working directory. It is the only line against
   these where step 1 is unavailable; on its own it is best-effort (audit hooks are not a
   security boundary), which is why steps 1-3 come first.

The verdict travels over a pipe (status_fd), one line per event: `layers ...` once the
sandbox is up, `result STATUS MESSAGE` when the program ends by itself (or by an exception), and
the waiter's `exit CODE CPU_S` or `signal NUMBER CPU_S` once the program's process is gone. At the
wall-clock timeout code.execute sends the waiter SIGTERM, on which it kills the program.
"""

import ctypes
import os
import resource
import sys

import _signal as signal  # signal without its enums: a quicker start

# <linux/sched.h>, <sys/mount.h>, <linux/prctl.h>.
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 0x400, 0x800, 0x1000, 0x4000, 0x40000, 0x200000
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 0x400, 0x800, 0x1000  # statvfs's f_flag spells atime flags its own way
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_PROCESSES_PID_NS = 301  # the smallest pid_max the kernel accepts: about 300 processes
# The command line's KEY=VALUE pairs and their types.
CONFIG = {"program": str, "workdir": str, "status_fd": int, "cpu_s": int, "memory_bytes": int, "file_bytes": int,
          "open_files": int, "processes": int, "guard": int, "isolate": int}

# Audit events the guard refuses outright, and those whose path arguments must lie inside the
# working directory (the position of each path argument; a dir_fd argument must be unset).
REFUSED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.remote_exec"})
REFUSED_PREFIXES = ("socket.", "ctypes.")
REFUSED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "_xxsubinterpreters", "_testcapi", "_testinternalcapi"})
PATH_EVENTS = {  # event -> (path argument positions, dir_fd argument positions)
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)),
    "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _libc():
  return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
  if ret != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _write_file(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def _unshare(libc) -> bool:
  """Enters new mount, network, PID and IPC namespaces (through a user namespace when not root)."""
  flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
  uid, gid = os.geteuid(), os.getegid()
  if uid != 0:
    flags |= CLONE_NEWUSER
  if libc.unshare(flags) != 0:
    return False
  if uid != 0:  # become root of the new user namespace, mapped to ourselves outside it
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"0 {uid} 1")
    _write_file("/proc/self/gid_map", f"0 {gid} 1")
  return True


def _mount_points() -> list[str]:
  """Mount points of this mount namespace, outermost first (from /proc/self/mountinfo)."""
  points = []
  with open("/proc/self/mountinfo") as f:
    for line in f:
      field = line.split()[4]
      points.append(field.encode().decode("unicode_escape"))  # \040 etc. are octal escapes
  return points


def _confine_filesystem(libc, workdir: str) -> list[str]:
  """Fresh /proc, a process cap, and every mount read-only except `workdir`.

  Each step that the kernel refuses is left out (a container may forbid mounting proc, say);
  returns the layers that were set up.
  """
  if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
    return []  # mounts made now could propagate outside the namespace
  layers = []
  if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) == 0:
    layers.append("proc")
    try:
      _write_file("/proc/sys/kernel/pid_max", str(MAX_PROCESSES_PID_NS))
      layers.append("process_cap")
    except OSError:
      pass  # a kernel without a pid_max per PID namespace (< 6.14)
  work = workdir.encode()
  if libc.mount(work, work, None, MS_BIND, None) != 0:
    return layers  # the working directory must stay writable
  points = [p for p in _mount_points() if not ("proc" in layers and p.startswith("/proc/"))]  # hidden by the new /proc
  for point in points:
    try:
      keep = os.statvfs(point).f_flag
    except OSError:
      continue  # a mount point hidden by another mount
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (0 if point == workdir else MS_RDONLY)
    flags |= MS_NOEXEC if keep & MS_NOEXEC else 0
    flags |= (MS_NOATIME if keep & ST_NOATIME else 0) | (MS_NODIRATIME if keep & ST_NODIRATIME else 0)
    flags |= MS_RELATIME if keep & ST_RELATIME else 0
    libc.mount(b"none", point.encode(), None, flags, None)
  if all(_read_only(point) for point in points if point != workdir):
    layers.append("readonly_fs")
  return layers


def _read_only(point: str) -> bool:
  try:
    return bool(os.statvfs(point).f_flag & MS_RDONLY)
  except OSError:
    return True  # not reachable by path: hidden under another mount


def _drop_capabilities(libc) -> None:
  """Drops every capability for good: bounding set, ambient, effective, permitted, inheritable."""
  _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
  cap = 0
  while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
    cap += 1
  libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
  header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
  data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words, all zero
  _check(libc.capset(header, data), "capset")


def _user_process_count(uid: int) -> int:
  count = 0
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        count += os.stat(f"/proc/{name}").st_uid == uid
      except OSError:
        pass
  return count


def _set_limits(config: dict, root: bool) -> None:
  cpu = int(config["cpu_s"])
  # SIGKILL at the limit: the SIGXCPU of a soft limit below the hard one never reaches PID 1 of a namespace.
  resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
  resource.setrlimit(resource.RLIMIT_AS, (config["memory_bytes"],) * 2)
  resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"],) * 2)
  resource.setrlimit(resource.RLIMIT_NOFILE, (config["open_files"],) * 2)
  if not root:  # the kernel counts every process of the user, and never limits root
    limit = _user_process_count(os.getuid()) + config["processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def _install_guard(workdir: str) -> None:
  """Adds the audit hook described in the module docstring (it cannot be removed)."""
  # Bound here so that a program rebinding module attributes cannot change what the hook calls.
  realpath, fspath, getpid, join, getcwd, sep = os.path.realpath, os.fspath, os.getpid, os.path.join, os.getcwd, os.sep
  inside = workdir.rstrip(sep) + sep
  own_proc = (f"/proc/{getpid()}/", "/proc/self/", "/proc/thread-self/")

  def resolve(path) -> str:
    path = fspath(path)
    if isinstance(path, bytes):
      path = path.decode(errors="surrogateescape")
    return realpath(join(getcwd(), path))

  def outside(path) -> bool:
    if isinstance(path, int):
      return True  # an fd may stand for any file
    full = resolve(path)
    return full != workdir and not full.startswith(inside)

  def hook(event, args):
    if event == "open":
      path, _, flags = args
      if isinstance(path, int):
        return
      full = resolve(path)
      if flags & WRITE_FLAGS and full != workdir and not full.startswith(inside):
        raise PermissionError(f"sandbox: writing {full} (outside the working directory) is not allowed")
      if full.startswith("/proc/") and full[6:7].isdigit() and not full.startswith(own_proc):
        raise PermissionError(f"sandbox: reading another process's {full} is not allowed")
    elif event in PATH_EVENTS:
      paths, dir_fds = PATH_EVENTS[event]
      if any(args[i] not in (None, -1) for i in dir_fds if i < len(args)) or any(
          outside(args[i]) for i in paths):
        raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
    elif event in REFUSED_EVENTS or event.startswith(REFUSED_PREFIXES):
      raise PermissionError(f"sandbox: {event} is not allowed")
    elif event == "import" and args[0] in REFUSED_IMPORTS:
      raise PermissionError(f"sandbox: importing {args[0]} is not allowed")

  sys.addaudithook(hook)


def _describe(error: BaseException) -> str:
  """The last line of the error's traceback, with the program's line where it was raised."""
  try:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    line, tb = None, error.__traceback__
    while tb is not None:
      if tb.tb_frame.f_code.co_filename == "<program>":
        line = tb.tb_lineno
      tb = tb.tb_next
    if line is not None and not isinstance(error, SyntaxError):
      text += f" (line {line})"
  except Exception:  # pylint: disable=broad-except  # a program's exception may fail to print
    text = type(error).__name__
  return " ".join(text.split())[:500]


def _run_program(config: dict, report) -> None:
  """Sets up the sandbox in this process, runs the program and reports how it ended."""
  libc = _libc()
  layers = list(config["layers"])
  if hasattr(libc, "prctl"):  # Linux: die with the waiter, even outside its process group
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
  if "namespaces" in layers:
    layers += _confine_filesystem(libc, config["workdir"])
    _drop_capabilities(libc)
    layers.append("no_capabilities")
  os.chdir(config["workdir"])
  os.umask(0o077)
  with open(config["program"], encoding="utf-8") as f:
    source = f.read()
  _set_limits(config, config["root"])
  layers.append("rlimits")
  if config["guard"]:
    _install_guard(config["workdir"])
    layers.append("guard")
  report(f"layers {','.join(layers)}")
  write, exit_, fd = os.write, os._exit, config["status_fd"]  # pylint: disable=protected-access
  try:
    code = compile(source, "<program>", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # pylint: disable=exec-used
    status, message = "passed", ""
  except AssertionError as e:
    status, message = "failed", _describe(e)
  except SystemExit as e:
    status, message = "failed", f"exited by SystemExit({e.code!r}) before the end of the program"
  except BaseException as e:  # pylint: disable=broad-except
    status, message = "error", _describe(e)
  try:
    write(fd, f"result {status} {message}\n".encode("utf-8", "replace"))
  finally:
    exit_(0)


def main() -> None:
  config = {}
  for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    config[key] = CONFIG[key](value)
  fd = config["status_fd"]

  def report(line: str) -> None:
    os.write(fd, (line + "\n").encode())

  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  config["root"] = os.geteuid() == 0  # outside any user namespace
  config["layers"] = []
  try:
    if config["isolate"] and _unshare(_libc()):
      config["layers"].append("namespaces")
  except (AttributeError, OSError):
    pass  # no namespaces here (or no unshare: not Linux): the limits and the guard remain
  # The program runs in a child (PID 1 of the new PID namespace, if any); this waiter reports its end.
  pid = os.fork()
  if pid == 0:
    try:
      _run_program(config, report)
    except BaseException as e:  # pylint: disable=broad-except  # the sandbox itself failed
      report(f"result error sandbox: {_describe(e)}")
      os._exit(1)  # pylint: disable=protected-access
  # code.execute's SIGTERM at the wall-clock timeout: kill the program, then report as usual.
  signal.signal(signal.SIGTERM, lambda number, frame: os.kill(pid, signal.SIGKILL))
  _, status, usage = os.wait4(pid, 0)
  cpu_s = usage.ru_utime + usage.ru_stime
  if os.WIFSIGNALED(status):
    report(f"signal {os.WTERMSIG(status)} {cpu_s:.3f}")
  else:
    report(f"exit {os.waitstatus_to_exitcode(status)} {cpu_s:.3f}")


if __name__ == "__main__":
  main()
