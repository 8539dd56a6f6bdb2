"""Sliding-window inference, peak picking and the competition's F2 rule."""
