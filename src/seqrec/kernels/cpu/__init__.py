"""CPU loops compiled with numba (imported lazily: numba is needed only for the int8 catalog top-k)."""
