import os
import termios

from pi_classifier.terminal import keyboard_signals_off


def test_signal_keys_off_and_restored_on_a_real_terminal():
    leader, follower = os.openpty()
    try:
        stream = os.fdopen(follower, "r", closefd=False)
        before = termios.tcgetattr(follower)
        assert before[3] & termios.ISIG
        with keyboard_signals_off(stream) as changed:
            during = termios.tcgetattr(follower)
            assert changed
            assert not during[3] & (termios.ISIG | termios.ICANON | termios.ECHO)
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)


def test_not_a_terminal_is_left_alone(tmp_path):
    with (tmp_path / "file").open("w+") as stream, keyboard_signals_off(stream) as ok:
        assert not ok
