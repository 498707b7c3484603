"""What every local web server of tunesmith puts in front of its routes."""
