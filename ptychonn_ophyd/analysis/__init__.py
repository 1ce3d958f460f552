"""Reading results back: stitching patches at their scan positions, aligning their phase
offsets, and replaying runs from the catalog."""
