// Viewer page: placeholder until the grid lands.
