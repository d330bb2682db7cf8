from cellar.cli.main import app

app(prog_name="cellar")
