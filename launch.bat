@echo off
rem One-click start on Windows: find Python 3.10-3.12, create .venv once, install requirements when
rem they change, then run app.py with every other argument (e.g. launch.bat --preset tiny).
rem   --setup-only   install and exit
rem   --reinstall    reinstall even if requirements.txt did not change
setlocal enabledelayedexpansion
cd /d "%~dp0"

set SETUP_ONLY=0
set REINSTALL=0
set APP_ARGS=
:parse
if "%~1"=="" goto parsed
if "%~1"=="--setup-only" (set SETUP_ONLY=1) else if "%~1"=="--reinstall" (set REINSTALL=1) else set APP_ARGS=!APP_ARGS! %1
shift
goto parse
:parsed

if exist ".venv\Scripts\python.exe" goto venv_ready
set PYTHON=
for %%P in ("py -3.12" "py -3.11" "py -3.10" python) do (
  if not defined PYTHON (
    %%~P -c "import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)" >nul 2>&1 && set PYTHON=%%~P
  )
)
if not defined PYTHON (
  echo Cascade Studio needs Python 3.10, 3.11 or 3.12. Install it from python.org and tick "Add to PATH".
  exit /b 1
)
echo Using %PYTHON% to create .venv
%PYTHON% -m venv .venv || exit /b 1
:venv_ready

for /f "skip=1 tokens=* delims=" %%H in ('certutil -hashfile requirements.txt SHA256') do if not defined WANT set WANT=%%H
set HAVE=
if exist ".venv\.requirements.sha256" set /p HAVE=<".venv\.requirements.sha256"
if "%REINSTALL%"=="1" set HAVE=
if not "%HAVE%"=="%WANT%" (
  echo Installing requirements into .venv ^(first start takes a few minutes^)...
  ".venv\Scripts\python.exe" -m pip install --quiet --upgrade pip || exit /b 1
  ".venv\Scripts\python.exe" -m pip install --quiet -r requirements.txt || exit /b 1
  > ".venv\.requirements.sha256" echo %WANT%
)

if "%SETUP_ONLY%"=="1" exit /b 0
".venv\Scripts\python.exe" app.py %APP_ARGS%
