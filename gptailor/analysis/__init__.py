"""Why a plan works: layer statistics (similarity, drift), and the importance of each position over a study's trials."""
