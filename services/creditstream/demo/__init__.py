"""`creditstream demo`: the whole platform on one machine, scaled by the local KEDA rule."""
