@echo off
rem Cascade Studio one-click start (Windows). Mirrors launch.sh step for step.
rem
rem   launch.bat [--reinstall] [--setup-only] [app.py flags...]
rem
rem 1. find Python 3.10-3.12     2. create .venv once
rem 3. install PyTorch for this machine (CUDA build matching the NVIDIA driver, else CPU)
rem 4. install requirements.txt  (steps 3-4 only when requirements.txt changed: a hash stamp),
rem    and requirements-cluster.txt (Ray Serve) when --cluster is given
rem 5. run app.py with every other argument
rem   --reinstall    install again even if requirements.txt did not change
rem   --setup-only   install and exit
rem   --which-torch  print which PyTorch wheel index this machine gets, and exit
rem Environment: STUDIO_TORCH_INDEX=URL forces PyTorch's wheel index (or "default" for PyPI).
setlocal enabledelayedexpansion
cd /d "%~dp0"

rem ---- options ------------------------------------------------------------------------------
set SETUP_ONLY=0
set REINSTALL=0
set WHICH_TORCH=0
set APP_ARGS=
:parse
if "%~1"=="" goto parsed
if "%~1"=="--setup-only" (
  set SETUP_ONLY=1
) else if "%~1"=="--reinstall" (
  set REINSTALL=1
) else if "%~1"=="--which-torch" (
  set WHICH_TORCH=1
) else (
  set APP_ARGS=!APP_ARGS! %1
)
shift
goto parse
:parsed

rem ---- which PyTorch build fits this machine (step 3 uses it) -------------------------------
if "%WHICH_TORCH%"=="1" (
  call :torch_index
  echo PyTorch index: !INDEX!
  exit /b 0
)

rem ---- 1. Python ----------------------------------------------------------------------------
rem ---- 2. virtual environment ---------------------------------------------------------------
if exist ".venv\Scripts\python.exe" (
  for /f "delims=" %%V in ('".venv\Scripts\python.exe" --version 2^>^&1') do echo Using .venv ^(%%V^)
  goto venv_ready
)
set PYTHON=
for %%P in ("py -3.12" "py -3.11" "py -3.10" "python") do (
  if not defined PYTHON (
    %%~P -c "import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)" >nul 2>&1 && set PYTHON=%%~P
  )
)
if not defined PYTHON (
  echo Cascade Studio needs Python 3.10, 3.11 or 3.12; none was found.
  echo Install it from https://www.python.org/downloads/ and tick "Add python.exe to PATH".
  exit /b 1
)
for /f "delims=" %%V in ('%PYTHON% --version 2^>^&1') do echo Found %%V ^(%PYTHON%^); creating .venv
%PYTHON% -m venv .venv || exit /b 1
:venv_ready
set PIP=".venv\Scripts\python.exe" -m pip

rem ---- 3. PyTorch for this machine ----------------------------------------------------------
copy /b requirements.txt+launch.bat "%TEMP%\studio-stamp.txt" >nul
set WANT=
for /f "skip=1 delims=" %%H in ('certutil -hashfile "%TEMP%\studio-stamp.txt" SHA256') do if not defined WANT set WANT=%%H
set HAVE=
if exist ".venv\.requirements.sha256" set /p HAVE=<".venv\.requirements.sha256"
if "%REINSTALL%"=="1" set HAVE=
if "%HAVE%"=="%WANT%" (
  echo Requirements unchanged since the last install: skipping it.
  goto installed
)
echo Installing into .venv ^(the first start takes a few minutes^)...
%PIP% install --quiet --upgrade pip || exit /b 1
for /f "delims=" %%T in ('findstr /b "torch==" requirements.txt') do set TORCH_PIN=%%T
call :torch_index
if defined INDEX (
  %PIP% install --quiet --retries 1 "%TORCH_PIN%" --index-url "%INDEX%" || echo PyTorch's index ^(%INDEX%^) could not be used; taking %TORCH_PIN% from the default index.
)
rem ---- 4. everything else -----------------------------------------------------------------
%PIP% install --quiet -r requirements.txt || exit /b 1
> ".venv\.requirements.sha256" echo %WANT%
echo Installed. Later starts skip this step (use --reinstall to force it).
:installed

rem ---- 4b. Ray Serve, only for --cluster (the embedded app never needs it) -------------------
set WANTS_CLUSTER=0
if defined STUDIO_CLUSTER set WANTS_CLUSTER=1
for %%A in (%APP_ARGS%) do if "%%~A"=="--cluster" set WANTS_CLUSTER=1
if "%WANTS_CLUSTER%"=="1" (
  set CLUSTER_WANT=
  for /f "skip=1 delims=" %%H in ('certutil -hashfile requirements-cluster.txt SHA256') do if not defined CLUSTER_WANT set CLUSTER_WANT=%%H
  set CLUSTER_HAVE=
  if exist ".venv\.cluster.sha256" set /p CLUSTER_HAVE=<".venv\.cluster.sha256"
  if "%REINSTALL%"=="1" set CLUSTER_HAVE=
  if not "!CLUSTER_HAVE!"=="!CLUSTER_WANT!" (
    echo Installing Ray Serve for --cluster ^(requirements-cluster.txt^)...
    %PIP% install --quiet -r requirements-cluster.txt || exit /b 1
    > ".venv\.cluster.sha256" echo !CLUSTER_WANT!
  )
)

if "%SETUP_ONLY%"=="1" exit /b 0

rem ---- 5. the app (it prints the local URL, and the LAN URLs with --listen) -----------------
".venv\Scripts\python.exe" app.py %APP_ARGS%
exit /b %ERRORLEVEL%

:torch_index
rem PyTorch's own wheel index for the newest CUDA the NVIDIA driver supports; empty for PyPI.
set INDEX=
if defined STUDIO_TORCH_INDEX (
  if not "%STUDIO_TORCH_INDEX%"=="default" set INDEX=%STUDIO_TORCH_INDEX%
  goto :eof
)
set CUDA=
for /f "tokens=3 delims=:" %%C in ('nvidia-smi 2^>nul ^| findstr /c:"CUDA Version"') do set CUDA=%%C
if not defined CUDA (
  echo No NVIDIA driver found: installing the CPU build of PyTorch.
  set INDEX=https://download.pytorch.org/whl/cpu
  goto :eof
)
for /f "tokens=1,2 delims=. " %%A in ("%CUDA%") do (set MAJOR=%%A& set MINOR=%%B)
set TAG=
if %MAJOR% GEQ 13 set TAG=cu130
if %MAJOR% EQU 12 if %MINOR% GEQ 8 set TAG=cu128
if %MAJOR% EQU 12 if %MINOR% GEQ 6 if %MINOR% LSS 8 set TAG=cu126
if not defined TAG (
  echo The NVIDIA driver supports CUDA %MAJOR%.%MINOR%, older than PyTorch's builds need ^(12.6^).
  echo Update the driver for GPU speed; installing the CPU build for now.
  set INDEX=https://download.pytorch.org/whl/cpu
  goto :eof
)
echo NVIDIA driver supports CUDA %MAJOR%.%MINOR%: installing PyTorch's %TAG% build.
set INDEX=https://download.pytorch.org/whl/%TAG%
goto :eof
