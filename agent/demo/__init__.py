"""`gridflex demo`: a simulated Modbus site on a real ERCOT day, run through the real service."""
