"""Sampling one window: pure tensor math, token layout, NAG and AdaIN."""
