"""``telediag report``: the teleconsultation report (PDF and HTML) of one recorded session."""
