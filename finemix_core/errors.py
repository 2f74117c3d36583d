"""One exception type for every mistake a user can make.

The CLI prints it as a single line and exits 2; the lab shows it with st.error. Messages name the
problem and the fix, never a traceback.
"""


class FinemixError(Exception):
    """A user-facing error: bad input, missing model or data, unsafe file."""
