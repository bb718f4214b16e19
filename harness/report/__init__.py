"""Stage 5: reports. summary.json (schema, regressions), terminal tables, JUnit, the HTML page and
its plots, and the unattended `ci` run that writes them."""
