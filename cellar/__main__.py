from cellar.cli import app

app(prog_name="cellar")
