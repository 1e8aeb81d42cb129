"""A stream that stops mid-run, as a killed job would: for the tests that resume training."""


class Interrupt(Exception):
    pass


def stopping(stream, after: int):
    """The items of `stream`, raising Interrupt instead of item number `after`."""
    for i, item in enumerate(stream):
        if i == after:
            raise Interrupt
        yield item
