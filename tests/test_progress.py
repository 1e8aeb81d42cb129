"""Progress bars: a bar belongs to the block it was made in, whatever happens to it later."""

from unweave import progress


def test_a_bar_left_open_by_an_earlier_block_cannot_touch_a_later_blocks_bar():
    # the LLC rule returns from inside `track`, so its generator is closed whenever the garbage
    # collector gets to it, possibly while a later command's bars are showing (ids restart at 0)
    with progress.enabled():
        earlier = progress.track(range(3), "earlier")
        next(earlier)
    with progress.enabled():
        later = progress.track(range(3), "later")
        next(later)
        earlier.close()
        assert list(later) == [1, 2]


def test_bars_are_removed_when_their_loop_ends():
    with progress.enabled():
        assert list(progress.track(range(2), "a")) == [0, 1]
        assert progress._progress.tasks == []
